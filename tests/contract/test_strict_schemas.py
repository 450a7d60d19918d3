"""Every schema under schemas/ compiles with a mainstream validator in another language,
Ajv (Node.js) in strict mode, and every example in them validates there too: a program
in any language can use the contract as it is."""

import json
import shutil
import subprocess

from tests.node_packages import SCHEMA_CHECK, installed, node


def run_check(schemas_dir=None):
    folder = installed(SCHEMA_CHECK)
    extra = [str(schemas_dir)] if schemas_dir else []
    done = subprocess.run([node(), str(folder / "compile_schemas.mjs"), *extra],
                          capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, json.loads(done.stdout)


def test_every_schema_compiles_with_ajv_in_strict_mode():
    code, report = run_check()
    assert report["errors"] == [], "\n".join(report["errors"])
    assert code == 0
    # four envelopes, the provisioning result, the agent file format, and each agent's
    # methods, events and classes
    assert report["compiled"] > 80 and report["examples"] > 80


def test_the_check_refuses_what_strict_mode_refuses(tmp_path):
    """The check itself can fail: a keyword no standard knows, as the request schema
    once had (x-amqp-properties), is an error in strict mode."""
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMA_CHECK.parents[2] / "schemas", copy)
    request = copy / "envelope" / "request.v1.json"
    doc = json.loads(request.read_text())
    doc["x-amqp-properties"] = {"message_id": {"required": True}}
    request.write_text(json.dumps(doc))
    code, report = run_check(copy)
    assert code == 1
    assert report["errors"] == ['envelope/request.v1.json: strict mode: unknown keyword: '
                                '"x-amqp-properties"']
