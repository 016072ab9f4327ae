"""Product quantization of conv and FC layers (Quantized-CNN, Wu et al., CVPR 2016).

Modules (imported explicitly, so that importing qcnn.pq stays cheap):
  layer     PQSetting, PQLayer (canonical storage + the reference lookup-table forward)
  settings  QuantSettings (what a quantized model is made from: one type for the CLI, the app,
            presets, search, cache keys and files), quantizable_layers, QUANTIZER_VERSION
  kmeans    codebook initialisation (k-means of all subspaces of a layer at once, in C)
  correct   error correction: response-error minimisation on calibration data
  quantize  quantize_layer, quantize_model, calibration_batch, reconstructed, Cancelled
  presets   named per-model settings (preset, preset_names)
  search    sensitivity analysis and greedy per-layer search (python -m qcnn.pq.search)
  cost      the cost model: MACs, table builds, lookups, storage, memory (qcnn cost)
  modelfile the .qcnn file: versioned, bit-packed codes, checksummed, atomic save, strict load
  kernels   validated entry points to the C lookup kernels (exact, fast-scan)
  engine    which implementation each PQ layer runs (reference, exact, fastscan, auto)
"""
