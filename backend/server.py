"""gunicorn, configured from ``Settings``: the process ``groundloop serve`` runs."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from active_learning.settings import Settings

WORKER_TIMEOUT = 300
"""Seconds gunicorn lets a worker go silent: it covers loading the model in the worker and one full /predict."""


class GunicornServer(BaseApplication):
    """gunicorn, configured from ``Settings`` instead of a config file.

    The model is loaded in ``load()``, which gunicorn calls in each worker AFTER forking (no ``preload_app``):
    torch's thread pools do not survive a fork, and each worker gets its own copy of the weights. Several
    threads per worker share that copy (``--threads``); detection itself runs one image at a time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": "gthread",
            "timeout": WORKER_TIMEOUT,
            "loglevel": s.log_level.lower(),
            "accesslog": "-",
            # no %(u)s: the basic-auth user field holds the whole secret when a client sends one without a colon
            "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(L)ss',
        }.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25: one fixed socket path per user
            self.cfg.set("control_socket_disable", True)  # would clash between two servers on one machine

    def load(self):
        from backend.app import create_app

        return create_app(self.settings)
