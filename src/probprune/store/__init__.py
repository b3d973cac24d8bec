"""Files: checkpoints (safetensors + JSON architecture), run folders, SQLite results.

Everything written goes to a temporary name first and is renamed into place, so an
interrupted write never leaves a half-written file. Nothing is ever unpickled.
"""

from probprune.store.checkpoint import (
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    load_tensors,
    save_tensors,
)

__all__ = ["atomic_write_bytes", "atomic_write_text", "file_sha256", "load_tensors", "save_tensors"]
