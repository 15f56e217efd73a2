"""The jobs behind the command line, one module per task; each a plain function a notebook can call.

- ``datasets``: the train / val datasets a config names, and what evaluation compares against;
- ``training``: a seeded model, trained on the config's data, evaluated at the end;
- ``evaluation``: the evaluators a run calls for, over its val set (box AP, proposal AR, mask AR,
  VOC's mAP), unreadable images skipped;
- ``proposals``: an RPN's proposals for every image of a split (Fast R-CNN's input);
- ``prediction``: detections for image files and folders, as JSON and drawn copies;
- ``conversion``: another library's Faster R-CNN weights as an fpn run;
- ``export``: a run as one ONNX graph, checked with ONNX Runtime;
- ``demo``: synthesise, train, evaluate and draw in one go;
- ``pretraining``: a backbone pre-trained as a classifier of object crops (``fpn pretrain``).

The paper's tables in miniature are an experiment built on these jobs: ``fpn.reproduction``.

Layering: ``cli`` -> ``api`` / ``jobs`` -> ``engine`` -> ``model``, ``data`` -> ``config``.
"""
