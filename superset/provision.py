"""Superset's content from the repository: admin user, Trino database, datasets, charts, dashboards.

Usage (Superset's Python, after `superset db upgrade` and `superset init`; see bootstrap.sh):
    python superset/provision.py superset/dashboards

The bundle folder is an asset export as Superset writes it (metadata.yaml, databases/, datasets/,
charts/, dashboards/; everything keyed by uuid). It is imported the way Superset's own
`POST /api/v1/assets/import/` does, which overwrites in place: re-running changes nothing, and a
chart taken off a dashboard in the bundle is unlinked from it. The database's URI is set from the
environment (TRINO_HOST, TRINO_PORT), the committed one being compose's. Every dashboard of the
bundle is published and opened to the Public role (anonymous visitors) through DASHBOARD_RBAC.
Any error stops with a non-zero exit (Superset's import-directory only logs them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

PUBLIC_ROLE = "Public"


def load_bundle(folder: Path) -> dict[str, str]:
    contents = {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.yaml"))}
    if "metadata.yaml" not in contents:
        raise SystemExit(f"provision: {folder} has no metadata.yaml")
    uri = f"trino://superset@{os.environ['TRINO_HOST']}:{os.environ['TRINO_PORT']}/postgresql"
    for name in [n for n in contents if n.startswith("databases/")]:
        config = yaml.safe_load(contents[name])
        if config["sqlalchemy_uri"].startswith("trino://"):
            config["sqlalchemy_uri"] = uri
            contents[name] = yaml.safe_dump(config, sort_keys=False)
    return contents


def ensure_admin(security_manager) -> object:
    """The admin of .env: created once, its password following .env on every run."""
    username, password = os.environ["SUPERSET_ADMIN_USER"], os.environ["SUPERSET_ADMIN_PASSWORD"]
    user = security_manager.find_user(username=username)
    if user is None:
        user = security_manager.add_user(
            username,
            "Superset",
            "Admin",
            f"{username}@localhost.invalid",
            security_manager.find_role("Admin"),
            password=password,
        )
        if not user:
            raise SystemExit(f"provision: could not create the admin user {username!r}")
        print(f"provision: created the admin user {username!r}")
    else:
        security_manager.reset_password(user.id, password)
    return user


def main(folder: Path) -> None:
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset.commands.importers.v1.assets import ImportAssetsCommand
        from superset.models.dashboard import Dashboard
        from superset.utils.core import override_user

        from superset import db, security_manager

        admin = ensure_admin(security_manager)
        contents = load_bundle(folder)
        with override_user(admin):
            try:
                ImportAssetsCommand(contents).run()
            except Exception as exc:  # the command wraps every failure; show what it found
                details = getattr(exc, "normalized_messages", lambda: None)() or getattr(exc, "_exceptions", "")
                raise SystemExit(f"provision: import of {folder} failed: {exc} {details}") from exc

        public = security_manager.find_role(PUBLIC_ROLE)
        for name, text in contents.items():
            if not name.startswith("dashboards/"):
                continue
            config = yaml.safe_load(text)
            dashboard = db.session.query(Dashboard).filter_by(uuid=config["uuid"]).one()
            expected = {
                c["meta"]["uuid"]
                for c in config["position"].values()
                if isinstance(c, dict) and c.get("type") == "CHART"
            }
            missing = expected - {str(s.uuid) for s in dashboard.slices}
            if missing:
                raise SystemExit(f"provision: dashboard {dashboard.dashboard_title!r} lacks charts {sorted(missing)}")
            dashboard.published = True
            dashboard.roles = [public]
            print(
                f"provision: dashboard {dashboard.dashboard_title!r} (/superset/dashboard/{dashboard.slug}/): "
                f"{len(dashboard.slices)} charts, public read-only"
            )
        db.session.commit()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "dashboards")
