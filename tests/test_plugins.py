"""The plugin manager: built-ins, third-party plugins found through the real `babeltune` entry-point
group (a dist-info on sys.path, as pip would install it), BABELTUNE_PLUGINS, check_pending, fallback,
and `babeltune plugins --json`."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from babeltune.errors import BabeltuneError
from babeltune.trainer import plugins


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch):
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def install_plugin(tmp_path, monkeypatch, dist: str, module: str, source: str, entry_name: str) -> None:
    """A minimal installed distribution: module + dist-info with an entry point, put on sys.path."""
    site = tmp_path / f"site-{dist}"
    site.mkdir()
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[babeltune]\n{entry_name} = {module}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))


GOOD_PLUGIN = """
    from babeltune.trainer.backend import Backend
    from babeltune.trainer.hookspecs import hookimpl

    class Frozen(Backend):
        name = "frozen-test"
        description = "test backend"
        def load(self, config, runtime):
            raise NotImplementedError("not used in this test")

    @hookimpl
    def register_backends(register):
        register(Frozen())

    @hookimpl
    def resolve_backend_fallback(name, reason):
        return "ia3" if name == "unsloth" else None
"""


def test_builtins_are_ordinary_plugins():
    assert plugins.BUILTIN_PLUGINS == {"hf-peft": "babeltune.plugins.hf_peft", "ia3": "babeltune.plugins.ia3",
                                       "unsloth": "babeltune.plugins.unsloth"}
    backends = plugins.available_backends()
    assert {"hf-peft", "ia3", "unsloth"} <= set(backends)
    pm = plugins.get_plugin_manager()
    assert {name for name, _ in pm.list_name_plugin()} >= {"hf-peft", "ia3", "unsloth"}


def test_env_var_limits_plugins(monkeypatch):
    monkeypatch.setenv(plugins.ENV_VAR, "ia3, unsloth")
    assert set(plugins.available_backends()) == {"ia3", "unsloth"}
    with pytest.raises(BabeltuneError, match="unknown backend 'hf-peft'.*BABELTUNE_PLUGINS"):
        plugins.select_backend("hf-peft")
    monkeypatch.setenv(plugins.ENV_VAR, "hf_peft")          # underscores and dashes are the same name
    assert set(plugins.available_backends()) == {"hf-peft"}
    monkeypatch.setenv(plugins.ENV_VAR, "ia4")
    with pytest.raises(BabeltuneError, match="BABELTUNE_PLUGINS: unknown plugin 'ia4' \\(did you mean 'ia3'\\?\\)"):
        plugins.available_backends()


def test_unknown_backend_name_suggests():
    with pytest.raises(BabeltuneError, match="unknown backend 'hf_peft' \\(did you mean 'hf-peft'\\?\\)"):
        plugins.select_backend("hf_peft")


def test_unsloth_falls_back_to_hf_peft_with_one_line(monkeypatch):
    from babeltune.plugins import unsloth as unsloth_plugin

    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: False)
    said: list[str] = []
    chosen = plugins.select_backend("unsloth", echo=said.append)
    assert chosen.name == "hf-peft"
    assert said == ["backend unsloth is not usable here: no NVIDIA GPU (torch.cuda.is_available() is False); "
                    "running hf-peft instead"]


def test_the_core_fallback_policy_is_a_plugin_that_answers_last(monkeypatch):
    from babeltune.trainer import fallback_policy

    pm = plugins.get_plugin_manager()
    assert pm.get_plugin(plugins.CORE_PLUGIN) is fallback_policy
    assert pm.hook.resolve_backend_fallback(name="unsloth", reason="no GPU") == "hf-peft"
    assert pm.hook.resolve_backend_fallback(name="hf-peft", reason="?") is None   # hf-peft has nowhere to go
    monkeypatch.setenv(plugins.ENV_VAR, "ia3")                # limiting plugins keeps the core's policy
    assert plugins.get_plugin_manager().hook.resolve_backend_fallback(name="ia3", reason="x") == "hf-peft"
    core = next(e for e in plugins.plugin_descriptions() if e["name"] == plugins.CORE_PLUGIN)
    assert core["hooks"] == ["resolve_backend_fallback"] and core["backends"] == []


def test_prepare_process_is_part_of_the_backend_contract(monkeypatch):
    from babeltune.plugins import unsloth as unsloth_plugin
    from babeltune.trainer.backend import Backend

    prepared: list[str] = []
    monkeypatch.setattr(unsloth_plugin.UnslothBackend, "availability", lambda self: (True, ""))
    monkeypatch.setattr(unsloth_plugin.UnslothBackend, "prepare_process", lambda self: prepared.append(self.name))
    assert plugins.select_backend("unsloth", echo=lambda line: None).name == "unsloth" and prepared == ["unsloth"]
    assert plugins.select_backend("ia3").prepare_process.__func__ is Backend.prepare_process   # the contract's no-op


def test_fallback_needs_the_fallback_loaded(monkeypatch):
    from babeltune.plugins import unsloth as unsloth_plugin

    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: False)
    monkeypatch.setenv(plugins.ENV_VAR, "unsloth")
    with pytest.raises(BabeltuneError, match="no usable fallback \\('hf-peft' is not loaded\\)"):
        plugins.select_backend("unsloth", echo=lambda line: None)


def test_entry_point_plugin_registers_backend_and_fallback_hook(tmp_path, monkeypatch):
    from babeltune.plugins import unsloth as unsloth_plugin

    install_plugin(tmp_path, monkeypatch, "frozen-plugin", "frozen_plugin_mod", GOOD_PLUGIN, "frozen")
    assert "frozen-test" in plugins.available_backends()
    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: False)
    said: list[str] = []
    assert plugins.select_backend("unsloth", echo=said.append).name == "ia3"   # the plugin's policy wins
    assert said[0].endswith("running ia3 instead")
    entry = next(e for e in plugins.plugin_descriptions() if e["name"] == "frozen")
    assert (entry["package"], entry["version"]) == ("frozen-plugin", "1.2.3")
    assert entry["hooks"] == ["register_backends", "resolve_backend_fallback"]
    assert entry["backends"][0]["name"] == "frozen-test"
    monkeypatch.setenv(plugins.ENV_VAR, "hf-peft")           # limiting also skips entry points
    assert "frozen-test" not in plugins.available_backends()


def test_unknown_hook_implementation_is_an_error(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "typo-plugin", "typo_plugin_mod", """
        from babeltune.trainer.hookspecs import hookimpl

        @hookimpl
        def register_backend(register):   # typo: the hook is register_backends
            pass
    """, "typo")
    with pytest.raises(BabeltuneError, match="register_backend.*hooks are extra_callbacks, register_backends, "
                                             "resolve_backend_fallback") as info:
        plugins.available_backends()
    assert len(str(info.value).splitlines()) == 1


def test_wrong_hook_arguments_are_an_error(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "args-plugin", "args_plugin_mod", """
        from babeltune.trainer.hookspecs import hookimpl

        @hookimpl
        def register_backends(registrar):
            pass
    """, "args")
    with pytest.raises(BabeltuneError, match="plugin args: .*registrar"):
        plugins.available_backends()


def test_broken_and_duplicate_plugins(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "dup-plugin", "dup_plugin_mod", """
        from babeltune.plugins.ia3 import IA3Backend
        from babeltune.trainer.hookspecs import hookimpl

        @hookimpl
        def register_backends(register):
            register(IA3Backend())
    """, "dup")
    with pytest.raises(BabeltuneError, match="two plugins register a backend named 'ia3'"):
        plugins.available_backends()
    plugins.reset_plugin_manager()
    monkeypatch.setenv(plugins.ENV_VAR, "hf-peft,broken")
    install_plugin(tmp_path, monkeypatch, "broken-plugin", "broken_plugin_mod", "import not_a_module_xyz\n", "broken")
    with pytest.raises(BabeltuneError, match="plugin broken: could not be imported .*not_a_module_xyz"):
        plugins.available_backends()


def test_entry_point_cannot_shadow_a_builtin(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "shadow-plugin", "shadow_plugin_mod", "", "ia3")
    with pytest.raises(BabeltuneError, match="plugin ia3: .*name of a built-in plugin"):
        plugins.available_backends()


def test_plugins_cli_json_and_table(monkeypatch):
    from babeltune.cli import cli
    from babeltune.plugins import unsloth as unsloth_plugin

    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: False)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_backend = {b["name"]: (p, b) for p in data["plugins"] for b in p["backends"]}
    assert set(by_backend) >= {"hf-peft", "ia3", "unsloth"}
    plugin, unsloth = by_backend["unsloth"]
    assert plugin["package"] == "babeltune" and plugin["hooks"] == ["register_backends"]
    assert unsloth["available"] is False and "no NVIDIA GPU" in unsloth["reason"]
    assert by_backend["hf-peft"][1]["available"] is True
    table = CliRunner().invoke(cli, ["plugins"], terminal_width=200)
    assert table.exit_code == 0 and "hf-peft" in table.output and "unsloth" in table.output
    bad = CliRunner().invoke(cli, ["plugins"], env={plugins.ENV_VAR: "nope"})
    assert bad.exit_code == 2 and "unknown plugin 'nope'" in bad.output
