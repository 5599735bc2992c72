"""`deploy-space`: the Gradio app deployed as a Space, against the local Hub stand-in (tests/hub_server.py).

Checks what a Space needs to build and run (app.py, requirements.txt, the package, a README with the
Spaces front matter), the MODEL_ID variable, that the uploaded files run as the app in a fresh process
with nothing but the Space's folder, the error paths (one paragraph, no token), and the repository
README's own front matter.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from hub_fixtures import READ_TOKEN, USER, WRITE_TOKEN, hub, hub_env  # noqa: F401  (fixtures: a local Hub stand-in)
from hub_server import Commit
from image_classifier.hub import HubError
from image_classifier.space import deploy_space, space_requirements

REPO = Path(__file__).resolve().parents[1]
SPACE = f"{USER}/cifar10-demo"
MODEL = f"{USER}/cifar10-cnn"
RETRY = "python -m image_classifier deploy-space"


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n"), text[:80]
    return yaml.safe_load(text.split("---\n", 2)[1])


def _model_on_hub(hub, repo_id: str = MODEL) -> str:
    """A model repo as someone's earlier push left it (the deploy only needs it to exist)."""
    hub.create_repo(repo_id)
    return repo_id


def test_deploy_uploads_what_the_space_needs_and_sets_model_id(hub, hub_env):
    _model_on_hub(hub)
    result = deploy_space(SPACE, MODEL, token=WRITE_TOKEN)
    assert result.url == f"{hub.url}/spaces/{SPACE}" and str(result) == result.url
    assert result.space_id == SPACE and result.model_id == MODEL and result.notes == []
    repo = hub.repo(SPACE, repo_type="space")
    assert repo.sdk == "gradio" and not repo.private and len(repo.commits) == 2  # created, then one commit
    assert repo.variables == {"MODEL_ID": MODEL} and "MODEL_ID" in repo.variable_descriptions
    assert repo.secrets == {}                                         # the token is never put in the Space

    files = hub.files(SPACE, repo_type="space")
    assert sorted(result.files) == sorted(set(files) - {".gitattributes"})
    assert files["app.py"] == (REPO / "app.py").read_bytes()
    package = REPO / "src" / "image_classifier"
    for name in ("__init__.py", "app_ui.py", "inference.py", "modeling_small_cnn.py", "configuration_small_cnn.py"):
        assert files[f"src/image_classifier/{name}"] == (package / name).read_bytes()
    assert any(p.startswith("src/image_classifier/metric_modules/") for p in files)
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc") or "/." in p]
    assert not [p for p in files if p.startswith(("tests/", "outputs/", "bench/", ".venv/"))]

    requirements = files["requirements.txt"].decode()
    assert "gradio" in requirements and "torch" in requirements and "transformers" in requirements
    assert not [line for line in requirements.splitlines() if line.strip().startswith(("-e", "-r", "."))]

    readme = files["README.md"].decode()
    front = _front_matter(readme)
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert front["sdk_version"] == metadata.version("gradio")      # the Space runs the Gradio tested here
    assert front["models"] == [MODEL] and front["title"] and len(front["short_description"]) <= 60
    assert 'api_name="/predict"' in readme and f'Client("{SPACE}")' in readme
    assert hub.unhandled == []
    assert not [p for _, p, _ in hub.requests if WRITE_TOKEN in p]


def test_redeploy_is_one_commit_and_drops_stale_modules(hub, hub_env):
    _model_on_hub(hub)
    _model_on_hub(hub, f"{USER}/cifar10-cnn-v2")
    deploy_space(SPACE, MODEL, token=WRITE_TOKEN)
    repo = hub.repo(SPACE, repo_type="space")
    stale = dict(repo.head.files, **{"src/image_classifier/old_module.py": b"# removed from the package"})
    repo.commits.append(Commit("f" * 40, "someone's edit", "", repo.head.date, stale))
    result = deploy_space("cifar10-demo", "cifar10-cnn-v2", token=WRITE_TOKEN)  # NAME alone: the token's user
    assert result.space_id == SPACE and result.model_id == f"{USER}/cifar10-cnn-v2"
    assert len(repo.commits) == 4 and "src/image_classifier/old_module.py" not in hub.files(SPACE, "space")
    assert repo.variables == {"MODEL_ID": f"{USER}/cifar10-cnn-v2"}
    assert _front_matter(hub.files(SPACE, "space")["README.md"].decode())["models"] == [f"{USER}/cifar10-cnn-v2"]


def test_private_model_and_private_space(hub, hub_env):
    hub.create_repo(MODEL, private=True)
    result = deploy_space(SPACE, MODEL, token=WRITE_TOKEN, private=True)
    assert hub.repo(SPACE, "space").private
    assert len(result.notes) == 1 and "HF_TOKEN" in result.notes[0] and "private" in result.notes[0]
    # an existing public Space is not silently deployed to when a private one was asked for
    hub.create_repo(f"{USER}/public-space", "space", sdk="gradio")
    with pytest.raises(HubError, match="already exists and is public"):
        deploy_space(f"{USER}/public-space", MODEL, token=WRITE_TOKEN, private=True)
    assert len(hub.repo(f"{USER}/public-space", "space").commits) == 1


def _failed(space=SPACE, model=MODEL, token=WRITE_TOKEN, **kwargs) -> HubError:
    with pytest.raises(HubError) as info:
        deploy_space(space, model, token=token, **kwargs)
    error = info.value
    text = str(error)
    assert text.startswith("Deploying the app to the Space") and RETRY in text and "\n" not in text
    for secret in (WRITE_TOKEN, READ_TOKEN, "hf_not_a_valid_token_at_all_123456"):
        assert secret not in text and secret not in (error.retry or "")
    return error


def test_model_not_on_the_hub(hub, hub_env):
    error = _failed()
    assert f"the model {MODEL} is not on the Hub" in str(error) and "image_classifier push" in str(error)
    assert hub.repo(SPACE, "space") is None                          # nothing created


def test_refused_tokens(hub, hub_env):
    _model_on_hub(hub)
    error = _failed(token="hf_not_a_valid_token_at_all_123456")
    assert error.status == 401 and "refused the token that was passed in" in str(error)
    error = _failed(token=READ_TOKEN)
    assert error.status == 403 and "creating the Space" in str(error) and "may not write" in str(error)
    error = _failed(token=None)
    assert "no Hub token was found" in str(error)
    assert hub.repo(SPACE, "space") is None


def test_failure_setting_the_variable_says_which_step(hub, hub_env):
    _model_on_hub(hub)
    hub.fail("POST", r"/api/spaces/.*/variables$", 500, times=10)
    error = _failed()
    assert "setting the MODEL_ID variable" in str(error) and error.status == 500
    assert "app.py" in hub.files(SPACE, "space")                     # the upload itself went through


def test_bad_ids_fail_before_any_request(hub, hub_env):
    for space, model in (("", MODEL), ("a/b/c", MODEL), (SPACE, "not a model"), (SPACE, "")):
        error = _failed(space, model)
        assert "must be USER/" in str(error)
    assert hub.requests == []


def test_requirements_for_a_space_drop_the_project_install(tmp_path):
    source = tmp_path / "requirements.txt"
    source.write_text("# comment\ntorch==2.14.1\ngradio>=6.0,<7  # ui\n-r other.txt\n-e .\n.\n\n")
    lines = [line for line in space_requirements(source).splitlines() if not line.startswith("#")]
    assert lines == ["torch==2.14.1", "gradio>=6.0,<7"]


def test_cli_deploy_space(hub, hub_env, capsys):
    from image_classifier.__main__ import main

    _model_on_hub(hub)
    assert main(["deploy-space", "--space_id", SPACE, "--hub_model_id", MODEL, "--hub_token", WRITE_TOKEN]) == 0
    assert capsys.readouterr().out.strip() == f"{hub.url}/spaces/{SPACE}"
    assert main(["deploy-space", "--space_id", SPACE, "--hub_model_id", f"{USER}/missing",
                 "--hub_token", WRITE_TOKEN]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: Deploying the app") and WRITE_TOKEN not in err
    assert err.count("\n") == 1                                        # one paragraph, no traceback


def test_the_uploaded_space_runs_the_app(hub, hub_env, tmp_path):
    """The Space's files alone (as the Space checks them out) build the app for the pushed model."""
    from test_inference import make_model_folder, push_model_folder

    push_model_folder(hub.url, make_model_folder(tmp_path / "model"), MODEL)
    deploy_space(SPACE, MODEL, token=WRITE_TOKEN)
    space = tmp_path / "space"
    for path, content in hub.files(SPACE, "space").items():
        (space / path).parent.mkdir(parents=True, exist_ok=True)
        (space / path).write_bytes(content)
    code = (
        "import sys; sys.argv = ['app.py']\n"
        "import app, image_classifier\n"
        "demo, launch = app.create_app(None, device='cpu')\n"
        "config = demo.get_config_file()\n"
        "card = next(c['props']['value'] for c in config['components'] if c['props'].get('elem_id') == 'model-card')\n"
        "print('PACKAGE', image_classifier.__file__)\n"
        "print('API', sorted(d.get('api_name') or '' for d in config['dependencies']))\n"
        "print('CARD', '<code>tester/cifar10-cnn</code>' in card, '81.2 %' in card)\n")
    env = {**hub_env, "MODEL_ID": hub.repo(SPACE, "space").variables["MODEL_ID"], "GRADIO_ANALYTICS_ENABLED": "False"}
    run = subprocess.run([sys.executable, "-c", code], cwd=space, env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0] in
                 ("PACKAGE", "API", "CARD"))
    assert Path(lines["PACKAGE"]).resolve().is_relative_to(space.resolve())  # the uploaded package, not ours
    assert "'predict'" in lines["API"] and lines["CARD"] == "True True"


def test_repository_readme_is_a_space_readme():
    """The checkout itself runs as a Space too: README front matter, and requirements that agree with it."""
    from packaging.requirements import Requirement

    front = _front_matter((REPO / "README.md").read_text(encoding="utf-8"))
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    gradio = next(Requirement(line) for line in (REPO / "requirements.txt").read_text().splitlines()
                  if line.strip().startswith("gradio"))
    assert gradio.specifier.contains(str(front["sdk_version"])), (front["sdk_version"], str(gradio))
