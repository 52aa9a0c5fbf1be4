"""The command line, the only place that prints or exits: main (parser and dispatch), one module
per subcommand group (rules, kernel, verify, live), and what they share (args, output)."""
