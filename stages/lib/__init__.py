"""The library the stages are built from: params, I/O, the pair table, the chat core, backends, metrics, miners."""
