"""Layer 1, I/O: run discovery, lazy per-tensor reading (full weights and LoRA factors), writing model folders and
every output under one rule (outputs, atomic, records, temporaries)."""
