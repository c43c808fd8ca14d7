"""The leaf kernel: errors, retry policy, child processes, redaction. Imports nothing of the project."""
