"""The Node.js client library of examples/node, written from docs/protocol.md, signs and
verifies exactly as docs/signing-vectors.json says (its own tests, run with node --test):
the specification is enough to interoperate with hostbus's signatures."""

import json
import subprocess

from tests.node_packages import NODE_EXAMPLES, installed, node


def test_the_node_client_signs_and_verifies_as_the_vectors_say():
    folder = installed(NODE_EXAMPLES)
    done = subprocess.run([node(), "--test", "test/"], cwd=folder, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    vectors = json.loads((NODE_EXAMPLES.parents[1] / "docs" / "signing-vectors.json")
                         .read_text())
    expected = len(vectors["cases"]) + len(vectors["must_not_verify"])
    assert "# fail 0" in done.stdout and f"# pass {expected}\n" in done.stdout
