"""Domain logic shared by the HTTP routes, the workers and the CLI; no HTTP in here."""
