"""The `agl` command line. It talks to the daemon over HTTP and never imports the server,
except to start it, and then lazily."""
