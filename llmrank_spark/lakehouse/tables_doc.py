"""docs/tables.md, generated from the contracts: `python -m llmrank_spark.lakehouse.tables_doc`."""

from __future__ import annotations

from llmrank_spark.lakehouse.contracts import CONTRACTS


def render_tables_doc() -> str:
    """docs/tables.md, generated from CONTRACTS."""
    out = [
        "# Table contracts",
        "",
        "Generated from `llmrank_spark/lakehouse/contracts.py` by `make docs`;",
        "a test fails when the two differ. Every job checks these contracts when it reads a table and",
        "before it writes one: a missing required column, a column of another type, or a null key fails",
        "the job with the table and column named, before anything is written. Columns not listed here",
        "are allowed on inputs and ignored.",
        "",
        "Output tables partitioned by `run_date` are written with Delta `replaceWhere` on that date:",
        "re-running a date replaces its partition in one atomic commit and never appends duplicates.",
        "New tables are created with the Delta change data feed enabled.",
        "",
        "## Reading the outputs downstream",
        "",
        "- **Freshness.** The nightly job writes one `run_date` partition per output per night. A",
        "  partition is complete once the `runs` table has a `succeeded` row for its step and date;",
        "  read the newest such date, not simply the newest partition.",
        "- **Keys.** Listed per table below; within a `run_date` they are unique.",
        "- **Model.** `ranked.model_version` names the reranker that scored each row, and the `runs`",
        "  row of the `rerank` step holds the Delta versions of every input it read. Model versions",
        "  are not a table: they are registered in MLflow, the `artifact_version` tag of a version",
        "  being its `ranked.model_version`",
        "  ([training.md](training.md#the-registry-mlflow-and-warm-start)).",
        "- **Incremental reads.** Outputs have the change data feed on:",
        "  `spark.read.format('delta').option('readChangeFeed', 'true').option('startingVersion', N)`.",
        "  A re-run of a date shows as deletes of the old partition's rows and inserts of the new ones.",
        "- **Schema changes.** Adding a nullable column is compatible: readers select columns by name",
        "  and ignore the rest. Renaming, removing or retyping a column, or changing a key, is breaking:",
        "  it ships as a new table (`<name>_v2`) written beside the old one for at least one release,",
        "  announced in the changelog, before the old table stops being written.",
        "",
    ]
    for spec in CONTRACTS.values():
        out += [f"## `{spec.name}` ({spec.role})", "", spec.purpose, ""]
        facts = [f"key: {', '.join(spec.keys) or '-'}"]
        facts.append(f"partitioned by: {', '.join(spec.partition_by) or 'not partitioned'}")
        if spec.written_by:
            facts.append(f"written by: {spec.written_by}")
        if spec.append_only:
            facts.append("append-only")
        out += ["- " + f for f in facts] + [""]
        out += ["| column | type | required | meaning |", "| --- | --- | --- | --- |"]
        for c in spec.columns:
            out.append(f"| `{c.name}` | `{c.type}` | {'yes' if c.required else 'no'} | {c.meaning} |")
        out.append("")
        if spec.extra_doc:
            out += [spec.extra_doc, ""]
        if spec.name == "candidates":
            out += _features_doc()
    return "\n".join(out)


def _features_doc() -> list[str]:
    """The ranking features the fusion reads for every (request, candidate) pair (`features.py`)."""
    from llmrank_spark.rerank import MEANINGS

    out = [
        "### Ranking features of every candidate",
        "",
        "Not a table: what the rerank step (and the train step, on the history before its split) computes",
        "for every (request, candidate) pair by Spark joins, whatever proposed the candidate, and feeds",
        "with the BERT score to the LambdaMART fusion (`llmrank_spark/rerank/features.py`).",
        "Query requests get the item features; their user features are 0.",
        "",
        "| feature | meaning |",
        "| --- | --- |",
    ]
    return [*out, *(f"| `{name}` | {meaning} |" for name, meaning in MEANINGS.items()), ""]


if __name__ == "__main__":
    print(render_tables_doc(), end="")
