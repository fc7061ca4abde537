"""The s3cache command line: one module per subcommand, above the parts (sidecar/, evictor/) and the shared core (s3cache/)."""
