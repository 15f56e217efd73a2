"""The jobs behind the command line, one module per task; each a plain function a notebook can call.

- ``datasets``: the train / val datasets a config names, and what evaluation compares against;
- ``training``: a seeded model, trained on the config's data, evaluated at the end;
- ``evaluation``: box AP and proposal AR of a model on a dataset, unreadable images skipped;
- ``prediction``: detections for image files and folders, as JSON and drawn copies;
- ``demo``: synthesise, train, evaluate and draw in one go.

Layering: ``cli`` -> ``api`` / ``jobs`` -> ``engine`` -> ``model``, ``data`` -> ``config``.
"""
