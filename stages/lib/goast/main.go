// Command goast lists the function declarations of Go sources the way go/parser and go/ast see them.
//
// It reads one JSON array of {"path", "source"} on stdin and writes one JSON array on stdout, one entry
// per input in the same order: {"path", "functions": [{"name", "line", "end_line", "doc"}], "error_line",
// "error"}. A source that does not parse has "error" set (the first error go/parser reports) and no
// functions. Which functions to keep (doc comment, length, generated files) is decided by the caller;
// this program only reports what go/ast holds. Standard library only: it builds offline.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/scanner"
	"go/token"
	"os"
	"strings"
)

type input struct {
	Path   string `json:"path"`
	Source string `json:"source"`
}

type function struct {
	Name    string `json:"name"`
	Line    int    `json:"line"`
	EndLine int    `json:"end_line"`
	Doc     string `json:"doc"` // FuncDecl.Doc.Text(): markers, directives and the first space removed
}

type result struct {
	Path      string     `json:"path"`
	Functions []function `json:"functions"`
	ErrorLine int        `json:"error_line,omitempty"`
	Error     string     `json:"error,omitempty"`
}

func main() {
	var inputs []input
	if err := json.NewDecoder(bufio.NewReader(os.Stdin)).Decode(&inputs); err != nil {
		fmt.Fprintln(os.Stderr, "goast: reading the JSON input:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(inputs))
	for _, in := range inputs {
		results = append(results, mine(in))
	}
	out := bufio.NewWriter(os.Stdout)
	if err := json.NewEncoder(out).Encode(results); err != nil || out.Flush() != nil {
		fmt.Fprintln(os.Stderr, "goast: writing the JSON output failed")
		os.Exit(2)
	}
}

// mine parses one source and lists its function declarations that have a body.
func mine(in input) result {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, in.Path, in.Source, parser.ParseComments|parser.SkipObjectResolution)
	res := result{Path: in.Path, Functions: []function{}}
	if err != nil {
		res.ErrorLine, res.Error = 1, err.Error()
		var list scanner.ErrorList
		if errors.As(err, &list) && len(list) > 0 {
			// Count lines up to the byte offset: Pos.Line would follow a //line directive.
			res.ErrorLine, res.Error = 1+strings.Count(in.Source[:list[0].Pos.Offset], "\n"), list[0].Msg
		}
		return res
	}
	for _, decl := range file.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Body == nil { // no body: implemented in assembly, nothing to learn from
			continue
		}
		doc := ""
		if fn.Doc != nil {
			doc = fn.Doc.Text()
		}
		// Unadjusted: a //line directive must not move the lines that the caller cuts the source at.
		line, end := fset.PositionFor(fn.Pos(), false).Line, fset.PositionFor(fn.End(), false).Line
		res.Functions = append(res.Functions, function{fn.Name.Name, line, end, doc})
	}
	return res
}
