"""The ground floor: errors, names, digests, files made official atomically, and locks. Imports
nothing of the project's and no third-party library: every package above may use it."""
