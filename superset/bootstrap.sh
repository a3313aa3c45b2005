#!/usr/bin/env bash
# Provisions Superset from this folder, with no clicks: metadata schema, roles, the admin user, the
# Trino database, the datasets, charts and dashboard of dashboards/, and the public view.
#
#   bootstrap.sh                  provision, then exit (compose's superset-init job, in the Superset image)
#   bootstrap.sh COMMAND [ARG...]  provision, then exec COMMAND (native `./stack up superset`: gunicorn,
#                                 which cannot boot on a metadata database that is not migrated yet)
# Both read the same environment (.env). Safe to run again: everything is updated in place, nothing
# is duplicated.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SUPERSET_CONFIG_PATH="${SUPERSET_CONFIG_PATH:-$here/superset_config.py}"

superset db upgrade
# Roles and permissions; with PUBLIC_ROLE_LIKE this also (re)sets the Public role's read-only set.
superset init
python "$here/provision.py" "$here/dashboards"
if [ "$#" -gt 0 ]; then
  exec "$@"
fi
