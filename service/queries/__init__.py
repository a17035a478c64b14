"""Database queries, one module per resource. Routes and the CLI call these; they never build SQL themselves."""
