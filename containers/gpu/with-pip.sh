#!/bin/sh
# Run one pip command for the environment /opt/pystitch with a throw-away pip,
# then `pip check`; used by containers/gpu/Dockerfile at build time.
#
# Usage: sh with-pip.sh PIP-ARGS...      e.g. sh with-pip.sh install -c constraints.txt -r requirements.txt
#
# The runtime image has no pip.  This installs python3-venv (for a pip in a
# temporary virtual environment), runs `pip --python /opt/pystitch/bin/python
# PIP-ARGS` (creating /opt/pystitch, without pip, on first use), checks the
# environment's requirements and removes the temporary pip, python3-venv and
# every Debian package it pulled in: the image layer of the RUN that calls
# this holds the environment's new files only.  The packages to purge come
# from dpkg (apt's autoremove would keep the ones python3 suggests).
#
# The build secret pip-ca, when mounted, is pip's CA bundle.
set -eu

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if [ -s /run/secrets/pip-ca ]; then
    export PIP_CERT=/run/secrets/pip-ca
fi

work=$(mktemp -d)
dpkg-query -W -f '${Package}\n' >"$work/before"
sort -o "$work/before" "$work/before"

apt-get update
apt-get install -y --no-install-recommends python3-venv
python3 -m venv "$work/pip"
[ -x /opt/pystitch/bin/python ] || python3 -m venv --without-pip /opt/pystitch

"$work/pip/bin/python" -m pip --python /opt/pystitch/bin/python "$@"
"$work/pip/bin/python" -m pip --python /opt/pystitch/bin/python check

dpkg-query -W -f '${Package}\n' >"$work/after"
sort -o "$work/after" "$work/after"
comm -13 "$work/before" "$work/after" >"$work/new"
xargs apt-get purge -y <"$work/new"
apt-get clean
rm -rf /var/lib/apt/lists/* "$work"
