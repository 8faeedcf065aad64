"""What the test packages share: helpers, constants and fixture plugins. Test modules take their helpers from
here, never from a conftest file. The fixture plugins (``*_fixtures``) are listed in ``pytest_plugins`` of the
top-level tests/conftest.py, so their fixtures reach every test package; tests never name them.

- ``backend``: the backend's test constants and helpers (``groundloop serve`` in a subprocess, PNGs, deploying a
  copy of a model, checking a prediction);
- ``backend_fixtures``: the backend under a Flask test client, with a local media server (plugin);
- ``training``: the labeled synthetic project the training tests use (annotation webhooks, settings changes);
- ``training_fixtures``: its synthetic shapes and their media server (plugin);
- ``datasets``: files on disk for import tests (PNG images, Pascal VOC XML);
- ``labelstudio``: a real Label Studio 1.23.2 server from its own venv;
- ``postgres``: a throwaway real PostgreSQL cluster;
- ``media``: a loopback HTTP server standing in for Label Studio's media;
- ``net``: a free loopback port.
"""
