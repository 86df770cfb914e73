# Sourced by scripts/test and scripts/demo: create (or reuse) a virtual
# environment and install cauldron_zmq into it with its test extra.
# Sets $venv.  PYTHON=/path/to/python selects another interpreter, which gets
# a venv of its own (.venv-3.9, ...).  pip's output goes to $venv/install.log
# and is shown only if the installation fails.
python=${PYTHON:-python3}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=.venv
if [ -n "${PYTHON:-}" ]; then venv=.venv-$version; fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$(cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    echo "Installing cauldron_zmq into $venv (pip's output: $venv/install.log) ..." >&2
    if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
           "$venv/bin/python" -m pip install --disable-pip-version-check -e '.[test]'; } \
            >"$venv/install.log" 2>&1; then
        cat "$venv/install.log" >&2
        echo "Installing cauldron_zmq into $venv failed; pip's output is above" \
             "and in $venv/install.log" >&2
        exit 1
    fi
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
