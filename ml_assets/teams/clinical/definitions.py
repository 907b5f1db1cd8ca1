"""The clinical team's code location."""

from pathlib import Path

from ml_assets.location import team_definitions

defs = team_definitions(Path(__file__).with_name("team.yaml"))
