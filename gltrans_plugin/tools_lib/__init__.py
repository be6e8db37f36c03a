"""Library code behind the user tools in ``tools/`` (issue 6).

Importing this package registers ``GLTransDistiller`` (fast-reid's ``Distiller`` with GLTrans
teachers) into fast-reid's meta-architecture registry; the other modules are imported by the
tools that need them (they pull in matplotlib, fvcore or onnx):

* ``loading``       config + checkpoint -> model (sizes read from the checkpoint), test data
* ``ranking_vis``   ranked-list grids with green / red frames
* ``attention``     GMA scores, patch-token maps and Grad-CAM of the final feature
* ``curves``        training curves from fast-reid's ``metrics.json`` (+ ``log.txt`` results)
* ``flops``         parameters and FLOPs per module (fvcore + a fused-attention handle)
* ``onnx_export``   ONNX export (images [+ camera ids], dynamic batch) and onnxruntime check
* ``convert``       TransReID / released-GLTrans checkpoints -> this plugin's models
* ``distill``       ``GLTransDistiller``
"""
from . import distill  # noqa: F401  (registers GLTransDistiller)
