"""The chat service's nginx settings and locations are written once, in deploy/chat/, and
both nginx configs include them: deploy/nginx.conf (production) and the cluster's config
rendered from deploy/nginx.cluster.conf.template (``make cluster``, the nginx tests)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from scripts.cluster import (
    CHAT_CONF_DIR,
    CLUSTER_TEMPLATE,
    PRODUCTION_CONFIG,
    ClusterError,
    find_nginx,
    mime_types_path,
    render_nginx_config,
)

pytestmark = pytest.mark.e2e


def locations(text: str) -> list[str]:
    return re.findall(r"^\s*location\s+([^{]+?)\s*\{", text, flags=re.MULTILINE)


def test_locations_live_only_in_deploy_chat() -> None:
    assert "location /ws/" in (CHAT_CONF_DIR / "server.conf").read_text()
    assert "limit_req_zone" in (CHAT_CONF_DIR / "http.conf").read_text()
    # Production keeps only its port-80 redirect; the cluster template none at all.
    assert locations(PRODUCTION_CONFIG.read_text()) == ["/"]
    assert locations(CLUSTER_TEMPLATE.read_text()) == []
    production = PRODUCTION_CONFIG.read_text()
    assert "include chat/http.conf;" in production
    assert "include chat/server.conf;" in production


def test_rendered_cluster_config_includes_deploy_chat_and_nginx_accepts_it(
    tmp_path: Path,
) -> None:
    try:
        nginx = find_nginx()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / name).mkdir(parents=True)
    static = tmp_path / "static"
    static.mkdir()
    text = render_nginx_config(
        prefix=tmp_path,
        listen="127.0.0.1:1",
        upstreams=["127.0.0.1:2", "127.0.0.1:3"],
        static_root=static,
        mime_types=mime_types_path(nginx),
    )
    assert f'include "{CHAT_CONF_DIR}/http.conf";' in text
    assert f'include "{CHAT_CONF_DIR}/server.conf";' in text
    assert f'set $chat_static_root "{static}";' in text
    assert "@@" not in text
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    check = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "e.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
