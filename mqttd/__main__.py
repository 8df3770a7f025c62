"""``python -m mqttd`` runs the command-line interface."""

from __future__ import annotations

from mqttd.cli import main

raise SystemExit(main())
