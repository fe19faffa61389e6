"""The ``ray`` backend: Flower's own ``run_simulation`` over the same ServerApp/ClientApp."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from flwr.simulation import run_simulation

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from sandbox.config import Config


def run_ray(server_app: ServerApp, client_app: ClientApp, cfg: Config) -> None:
    backend_config = {
        "client_resources": {"num_cpus": cfg.ray.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "logging_level": logging.ERROR,
            "include_dashboard": False,
        },
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=cfg.data.num_clients,
        backend_config=backend_config,
    )
