"""The composition root: which subsystems this installation runs.

Subsystems register themselves with one line in ``pyproject.toml``::

    [project.entry-points."voltbourse.subsystems"]
    settlement = "settlement.plugin:SUBSYSTEM"

(a :class:`~exchange.gateway.plugin.Subsystem` value). ``serve``, the demo, the
benchmarks, the CLI and the schema generator all take the list from here, so a
new subsystem touches only its own package plus that line (then ``make`` reinstalls).
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from aiohttp import web

from exchange.gateway.app import openapi_document, ws_schema_document
from exchange.gateway.plugin import Subsystem
from exchange.portal.plugin import AGENT_PLANNERS
from exchange.runtime.db import SUBSYSTEMS_GROUP
from exchange.tools.agent_planners import PLANNERS


@functools.cache
def subsystems() -> tuple[Subsystem, ...]:
    """The installed subsystems, by name."""
    out = []
    for ep in sorted(entry_points(group=SUBSYSTEMS_GROUP), key=lambda e: e.name):
        sub = ep.load()
        if not isinstance(sub, Subsystem):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not an exchange.gateway.plugin.Subsystem")
        out.append(sub)
    return tuple(out)


def configure(app: web.Application) -> web.Application:
    """What the composition root hands the subsystems of a market's app before it starts:
    the portal's trading agent gets the bots' prosumer and battery planners."""
    app[AGENT_PLANNERS] = dict(PLANNERS)
    return app


def openapi() -> dict:
    """docs/openapi.json: the gateway's routes and every installed subsystem's."""
    return openapi_document(subsystems())


def ws_schema() -> dict:
    """docs/ws-schema.json: the core peer messages and every installed subsystem's."""
    return ws_schema_document(subsystems())
