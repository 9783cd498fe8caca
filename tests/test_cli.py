"""The CLI as a user runs it: exit codes, tables, clear errors."""

from typer.testing import CliRunner

from jobs.cli import app

cli = CliRunner()


def test_every_command_has_help():
    for args in (["--help"], ["samples", "--help"], ["ingest", "--help"], ["status", "--help"],
                 ["catalog", "sql", "--help"], ["demo", "--help"]):
        result = cli.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


SIM_SOURCES = """
sources:
  - {kind: robotwin, root: samples/robotwin}
  - {kind: task_agnostic, root: samples/task_agnostic/aloha_random}
"""


def test_ingest_then_status_and_sql(workdir):
    cfg = workdir / "sim.yaml"
    cfg.write_text(SIM_SOURCES)
    result = cli.invoke(app, ["ingest", "--config", str(cfg), "--workdir", str(workdir), "--engine", "local"])
    assert result.exit_code == 0, result.output
    assert "Funnel per source entry and stage" in result.output
    status = cli.invoke(app, ["status", "--workdir", str(workdir)])
    assert status.exit_code == 0 and "robotwin" in status.output and "task_agnostic" in status.output
    # what each source's action dims mean: sim joint targets, sent after each frame
    semantics = status.output.split("Action semantics per source", 1)[1].split("Funnel", 1)[0]
    assert "absolute:joint" in semantics.replace("\n", "") and "after" in semantics
    sql = cli.invoke(app, ["catalog", "sql", "SELECT source, count(*) AS n FROM items GROUP BY source ORDER BY source",
                           "--workdir", str(workdir)])
    assert sql.exit_code == 0
    lines = [l for l in sql.output.splitlines() if "robotwin" in l or "task_agnostic" in l]
    assert any("2" in l for l in lines if "robotwin" in l) and any("3" in l for l in lines if "task_agnostic" in l)


def test_bad_sql_and_missing_catalog_and_bad_config_are_clear_errors(tmp_path):
    missing = cli.invoke(app, ["status", "--workdir", str(tmp_path)])
    assert missing.exit_code == 2 and "no catalog" in missing.output
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("runner:\n  engin: ray\n")
    bad = cli.invoke(app, ["ingest", "--config", str(cfg)])
    assert bad.exit_code == 2 and "unknown key(s) ['engin']" in bad.output
    cfg.write_text("splits:\n  train: 0.9\n  val: 0.9\n  test: 0.1\n")
    bad = cli.invoke(app, ["ingest", "--config", str(cfg)])
    assert bad.exit_code == 2 and "sum to 1" in bad.output


def test_missing_source_is_reported_with_exit_code_1(workdir):
    result = cli.invoke(app, ["ingest", "--workdir", str(workdir), "--engine", "local"])  # defaults name ssv2/ego4d too
    assert result.exit_code == 1
    assert "source ssv2:samples/ssv2 skipped" in result.output and "does not exist" in result.output
    assert "robotwin" in result.output  # the sources that exist were still ingested


def test_sql_error_is_reported(workdir):
    cli.invoke(app, ["ingest", "--workdir", str(workdir), "--engine", "local"])
    result = cli.invoke(app, ["catalog", "sql", "SELECT nope FROM items", "--workdir", str(workdir)])
    assert result.exit_code == 2 and "query failed" in result.output
