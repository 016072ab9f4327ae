"""qcnn: Quantized-CNN (Wu et al., CVPR 2016) — dense and product-quantized CNN inference."""
__version__ = "0.1.0"
