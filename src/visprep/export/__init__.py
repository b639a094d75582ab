"""Export a split as WebDataset shards with a resumable writer, a manifest, and two readers.

`write_shards` and `read_manifest` need only the standard library; the readers in `visprep.export.loader` need
numpy and simplejpeg, plus webdataset (`webdataset_pipeline`) or torch (`ShardDataset`).
"""

from visprep.export.manifest import ShardManifest, ShardRecord, read_manifest
from visprep.export.shards import ShardSample, validate_key, write_shards

__all__ = ["ShardManifest", "ShardRecord", "ShardSample", "read_manifest", "validate_key", "write_shards"]
