"""OUTPUT and the run's other files on disk, one job per module.

- ``plan``: which files a run may touch, refused before the first request
- ``lock``: one writer per file (``flock`` for the whole run)
- ``read``: OUTPUT's whole lines (plain, gzip, stdin) and its records, one per key
- ``repair``: proving OUTPUT batchpoll's, then cutting a torn tail or rewriting it
- ``append``: records appended as whole lines or gzip members
- ``split``: the ``--split-by-status`` files
- ``replace``: replacing a file whole (temporary file, fsync, rename, directory fsync)

What a record line is, and which torn tails are ours, is ``_core.recordline``'s (pure).
"""
