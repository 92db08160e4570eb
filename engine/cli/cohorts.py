"""``moerules cohorts STATE``: the cohorts a membership state holds, and their sizes.

What MoEngage should contain, as far as its acknowledgements go: per cohort, the users it
acknowledged (``members``), what the partner's latest word adds or removes beyond that (a
run that stopped, a change that failed: the next run sends it) and exports still waiting for
pages. ``--members COHORT_ID`` lists the users of one cohort. ``register`` adds the command
to the ``moerules`` group.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

__all__ = ["register"]


@click.command("cohorts")
@click.argument("state", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--members",
    "cohort_id",
    metavar="COHORT_ID",
    help="list the users MoEngage acknowledged in this cohort",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def cohorts(state: Path, cohort_id: str | None, as_json: bool) -> None:
    """List the cohorts a membership STATE file holds (a cohort bundle's `state` setting)."""
    from moerules.engine.runtime.membership import StateError, members_of, summarise

    try:
        if cohort_id is not None:
            found = members_of(state, cohort_id)
            if as_json:
                click.echo(
                    orjson.dumps(
                        [
                            {
                                "scope": scope,
                                "partner": partner,
                                "cohort_id": cohort_id,
                                "members": uids,
                            }
                            for (scope, partner), uids in found.items()
                        ]
                    ).decode()
                )
                return
            if not found:
                click.echo(f"no cohort {cohort_id!r} with members in {state}")
            for (scope, partner), uids in found.items():
                click.echo(f"{partner} cohort {cohort_id} at {scope}: {len(uids)} members")
                for uid in uids:
                    click.echo(f"  {uid}")
            return
        rows = list(summarise(state))
    except StateError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps([row.to_dict() for row in rows]).decode())
        return
    if not rows:
        click.echo(f"no cohorts in {state}")
        return
    table: list[list[Any]] = [
        [
            "destination",
            "partner",
            "cohort",
            "segment",
            "members",
            "to add",
            "to remove",
            "updated",
            "incomplete exports",
        ]
    ]
    for row in rows:
        pending = ", ".join(
            f"{key} ({got} of {pages} pages)" for key, got, pages in row.pending_exports
        )
        table.append(
            [
                row.scope,
                row.partner,
                row.cohort_id,
                row.segment,
                row.synced,
                row.to_add,
                row.to_remove,
                _when(row.updated),
                pending or "-",
            ]
        )
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    numeric = {4, 5, 6}
    for r in table:
        cells = [
            str(v).rjust(widths[i]) if i in numeric else str(v).ljust(widths[i])
            for i, v in enumerate(r)
        ]
        click.echo("  ".join(cells).rstrip())


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def register(main: click.Group) -> None:
    main.add_command(cohorts)
