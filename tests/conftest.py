"""Every test that takes the `xp` fixture runs once per backend: numpy always, cupy when
CuPy imports and a GPU is present (those runs are marked `gpu` and skipped elsewhere)."""
import numpy
import pytest

from nn.runtime import threads as cpu_threads, use_threaded_gradients
from helpers import force_every_split


def _gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _gpu_available()
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="CuPy or a CUDA GPU is not available")]),
]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA GPU")
    use_threaded_gradients()  # the engine's gradient passes on every core, as programs set them


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module under test: numpy or cupy."""
    if request.param == "cupy":
        import cupy
        return cupy
    return numpy


@pytest.fixture
def threads():
    """Restores the thread count after the test."""
    before = cpu_threads.get_num_threads()
    yield
    cpu_threads.set_num_threads(before)


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def split_everything(request, monkeypatch, threads):
    """n threads and every split forced (force_every_split)."""
    cpu_threads.set_num_threads(request.param)
    force_every_split(monkeypatch)
    return request.param
