"""Product quantization of conv and FC layers (Quantized-CNN, Wu et al., CVPR 2016).

Modules (imported explicitly, so that importing qcnn.pq stays cheap):
  layer     PQSetting, PQLayer (canonical storage + the reference lookup-table forward)
  kmeans    codebook initialisation (scikit-learn k-means per subspace)
  correct   error correction: response-error minimisation on calibration data
  quantize  QuantConfig, quantizable_layers, quantize_layer, quantize_model, calibration_batch,
            reconstructed, Cancelled
  presets   named per-model configurations (preset, preset_names)
  search    sensitivity analysis and greedy per-layer search (python -m qcnn.pq.search)
  cost      the cost model: MACs, table builds, lookups, storage, memory (qcnn cost)
  modelfile the .qcnn file: versioned, bit-packed codes, checksummed, atomic save, strict load
  kernels   validated entry points to the C lookup kernels (exact, fast-scan)
  engine    which implementation each PQ layer runs (reference, exact, fastscan, auto)
"""
