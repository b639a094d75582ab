"""The shared read layer: views over the workspace's tables that several stages read.

Stage packages import from here rather than from each other, so that no stage module is another stage's library
(the one-writer redesign, docs/architecture.md). A view reads; it never writes a table.
"""
