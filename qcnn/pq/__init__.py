"""Product quantization of conv and FC layers (Quantized-CNN, Wu et al., CVPR 2016).

Modules (imported explicitly, so that importing qcnn.pq stays cheap):
  layer     PQSetting, PQLayer (canonical storage + the reference lookup-table forward)
  kmeans    codebook initialisation (scikit-learn k-means per subspace)
  correct   error correction: response-error minimisation on calibration data
  quantize  QuantConfig, quantizable_layers, quantize_layer, quantize_model, calibration_batch,
            reconstructed, Cancelled
  presets   named per-model configurations (preset, preset_names)
  search    sensitivity analysis and greedy per-layer search (python -m qcnn.pq.search)
  _budget   the search's private MAC / bit counts (the reported ones live in cost.py)
"""
