"""Model loading: `models` (a preset, config file or weights folder loaded on a device), `placement` (one model
across several devices with accelerate) and `fits` (do the weights fit before anything is built)."""
