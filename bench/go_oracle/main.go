// Command go_oracle lists the documented functions of a Go tree as Go's own tools see them: the oracle
// that bench/go_mining.py scores loradag's Go mining against.
//
// Written apart from loradag's miner on purpose: it walks the tree itself (filepath.WalkDir), reads the
// bytes itself, tells generated files with ast.IsGenerated, and keeps what go/parser finds even in a file
// with syntax errors. The rules are the ones loradag documents: a FuncDecl with a body, whose Doc has
// text, spanning at least -min-lines lines; folders named vendor, testdata, node_modules, .git,
// __pycache__, site-packages or .venv skipped.
//
//	go run main.go -min-lines 5 ROOT > oracle.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

var skippedDirs = map[string]bool{
	"vendor": true, "testdata": true, "node_modules": true, ".git": true,
	"__pycache__": true, "site-packages": true, ".venv": true,
}

type function struct {
	Path     string `json:"path"`
	Symbol   string `json:"symbol"`
	Receiver string `json:"receiver"`
	Line     int    `json:"line"`
	EndLine  int    `json:"end_line"`
	Doc      string `json:"doc"`
}

type report struct {
	Files      int        `json:"files"`
	Generated  int        `json:"generated"`
	ParseError []string   `json:"parse_errors"`
	Functions  []function `json:"functions"`
}

func main() {
	minLines := flag.Int("min-lines", 5, "shortest function kept, in lines")
	flag.Parse()
	root := flag.Arg(0)
	rep := report{ParseError: []string{}, Functions: []function{}}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && skippedDirs[d.Name()] {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rep.Files++
		return visit(&rep, filepath.ToSlash(rel), path, *minLines)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_oracle:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(rep)
}

func visit(rep *report, rel, path string, minLines int) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, rel, src, parser.ParseComments)
	if err != nil {
		rep.ParseError = append(rep.ParseError, err.Error())
	}
	if file == nil {
		return nil
	}
	if ast.IsGenerated(file) {
		rep.Generated++
		return nil
	}
	ast.Inspect(file, func(n ast.Node) bool {
		fn, ok := n.(*ast.FuncDecl)
		if !ok {
			return true
		}
		doc := strings.TrimSpace(fn.Doc.Text())                                                      // Text of a nil group is ""
		start, end := fset.PositionFor(fn.Pos(), false).Line, fset.PositionFor(fn.End(), false).Line // not moved by //line
		if fn.Body != nil && doc != "" && end-start+1 >= minLines {
			rep.Functions = append(rep.Functions, function{rel, fn.Name.Name, receiver(fn), start, end, doc})
		}
		return false
	})
	return nil
}

func receiver(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return ""
	}
	t := fn.Recv.List[0].Type
	if star, ok := t.(*ast.StarExpr); ok {
		t = star.X
	}
	switch t := t.(type) {
	case *ast.IndexExpr:
		return fmt.Sprint(t.X)
	case *ast.IndexListExpr:
		return fmt.Sprint(t.X)
	}
	return fmt.Sprint(t)
}
