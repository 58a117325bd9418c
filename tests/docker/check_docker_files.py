#!/usr/bin/python3
"""The Docker files, checked statically and fast (label unit; tests/docker/docker_test.sh builds and
runs them, label docker): docker/compose.yml against the Compose specification's JSON schema, every
path the Dockerfile copies and every path compose.yml mounts or builds from exists, the images are
built with the same scripts as CI, and nothing needs a registry or a newer engine than Debian's
(every FROM is the local Debian base or a stage, no `# syntax=` line)."""
import json
import os
import re
import sys

import jsonschema
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
errors = []


compose_path = os.path.join(ROOT, "docker", "compose.yml")
with open(compose_path) as f:
    compose = yaml.safe_load(f)

# The Compose Specification's schema (draft-07, Apache-2.0, commit 170098ba07d9, June 2026), kept
# in the repository: a test reads no file from outside it.
schema_path = os.path.join(ROOT, "tests", "docker", "compose-spec.json")
with open(schema_path) as f:
    schema = json.load(f)
validator = jsonschema.Draft7Validator(schema)
for e in sorted(validator.iter_errors(compose), key=lambda e: list(e.path)):
    errors.append("compose.yml: %s: %s" % ("/".join(map(str, e.path)) or "(root)", e.message))
print("compose.yml validated against %s" % os.path.relpath(schema_path, ROOT))

compose_dir = os.path.dirname(compose_path)
for name, service in compose.get("services", {}).items():
    build = service.get("build")
    if isinstance(build, dict):
        context = os.path.normpath(os.path.join(compose_dir, build.get("context", ".")))
        if not os.path.isdir(context):
            errors.append("service %s: build context %s does not exist" % (name, context))
        dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            errors.append("service %s: %s does not exist" % (name, dockerfile))
        target = build.get("target")
        with open(dockerfile) as f:
            if target and not re.search(r"^FROM .* AS %s$" % re.escape(target), f.read(), re.M | re.I):
                errors.append("service %s: Dockerfile has no stage %s" % (name, target))
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith(".") and not os.path.exists(os.path.join(compose_dir, source)):
            errors.append("service %s: mounted path %s does not exist" % (name, source))
names = [s.get("container_name") for s in compose["services"].values()]
for wanted in ("etl_postgres", "etl_kafka", "etl_connect", "etl_runner"):
    if wanted not in names:
        errors.append("no container named %s" % wanted)

dockerfile_path = os.path.join(ROOT, "docker", "Dockerfile")
with open(dockerfile_path) as f:
    text = f.read().replace("\\\n", " ")
copied = 0
for line in text.splitlines():
    parts = line.split()
    if not parts or parts[0].upper() not in ("COPY", "ADD") or any(p.startswith("--from") for p in parts):
        continue
    args = [p for p in parts[1:] if not p.startswith("--")]
    for source in args[:-1]:
        copied += 1
        if source.startswith("build/"):
            continue  # made by scripts/docker-up before the build (the jars)
        if not os.path.exists(os.path.join(ROOT, source)):
            errors.append("Dockerfile copies %s, which does not exist" % source)
stages = set()
for m in re.finditer(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
    image, stage = m.group(1), m.group(2)
    if image not in stages and image not in ("debian:bookworm", "debian:bookworm-slim"):
        errors.append("Dockerfile: FROM %s is neither the local Debian base nor an earlier stage (no registry here)" % image)
    if stage:
        stages.add(stage)
if re.search(r"^#\s*syntax=", text, re.M):
    errors.append("Dockerfile: a '# syntax=' line makes the builder contact a registry")
for needed in ("scripts/install-deps.sh", "cmake --preset release", "scripts/cdc/broker-pom.xml", "scripts/cdc/connect-pom.xml"):
    if needed not in text:
        errors.append("Dockerfile does not use %s (images must be built with CI's scripts)" % needed)
for script in ("docker/kafka-entrypoint.sh", "docker/postgres-entrypoint.sh", "docker/startup.sh", "scripts/docker-up",
               "scripts/docker-engine"):
    if not os.access(os.path.join(ROOT, script), os.X_OK):
        errors.append("%s is not executable" % script)

if errors:
    print("\n".join("FAIL: " + e for e in errors))
    sys.exit(1)
print("docker files: ok (%d copied paths exist)" % copied)
