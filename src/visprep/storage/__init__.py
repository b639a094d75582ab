"""Storage of a workspace on an object store: objects with conditional PUTs, the manifest commit protocol of
tables and folders (`trees`), the writer lock (`lock`)."""
