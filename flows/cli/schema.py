"""`sage schema`: the JSON schemas of what an evaluation writes and of its config."""

from __future__ import annotations

from flows.cli.options import app


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON schemas of evaluation results (ScoreRow, LeaderboardRow) and of EvaluateConfig."""
    import json

    from sage_core.config import EvaluateConfig
    from sage_core.scoring.leaderboard import json_schemas

    print(json.dumps({**json_schemas(), "EvaluateConfig": EvaluateConfig.model_json_schema()}, indent=1))
