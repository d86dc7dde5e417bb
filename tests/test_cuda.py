"""CUDA paths: skipped without a GPU, run on one."""

import pyro
import pyro.optim
import torch

from pyro_vae import jobs
from pyro_vae.config import RunConfig
from pyro_vae.infer import DeviceSVI, DeviceTrace_ELBO, importance_log_likelihood
from pyro_vae.models import ProbabilisticPCA
from tests.helpers import binary_data, requires_cuda, tiny_vae


@requires_cuda
def test_estimator_is_exact_on_cuda():
    ppca = ProbabilisticPCA()
    ppca.W, ppca.mu = ppca.W.cuda(), ppca.mu.cuda()
    x = ppca.sample_data(50).cuda()
    r = importance_log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=100, chunk_size=30)
    assert r.log_px.device.type == "cuda"
    torch.testing.assert_close(r.log_px, ppca.log_px(x), rtol=0, atol=1e-9)


@requires_cuda
def test_cuda_svi_step_reads_nothing_back(monkeypatch):
    vae = tiny_vae().cuda()
    x = binary_data(64).cuda()
    svi = DeviceSVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), DeviceTrace_ELBO(max_plate_nesting=1)
    )
    svi.step(x)
    original_item = torch.Tensor.item

    def item(self):
        assert self.device.type != "cuda", "a CUDA tensor was read back inside the step"
        return original_item(self)

    with pyro.validation_enabled(False):
        monkeypatch.setattr(torch.Tensor, "item", item)
        loss = svi.step(x, index=torch.arange(64, device="cuda"), num_data=640)
    assert loss.device.type == "cuda"


@requires_cuda
def test_train_and_evaluate_on_cuda(tmp_path):
    config = RunConfig().replace(
        model={"latent_dim": 3, "hidden": (32,)},
        train={"epochs": 2, "device": "cuda", "eval_samples": 50},
    )
    result = jobs.train(config, tmp_path / "r", progress=False, echo=lambda s: None)
    assert result.history[-1].val_elbo > result.history[0].val_elbo - 1.0
    assert result.evaluation.log_px >= result.evaluation.elbo


@requires_cuda
def test_free_memory_and_pass_budget_on_cuda():
    from pyro_vae.infer.passes import PASS_VALUES, pass_values
    from pyro_vae.memory import free_memory_bytes

    device = torch.device("cuda")
    free = free_memory_bytes(device)
    assert 0 < free <= torch.cuda.get_device_properties(device).total_memory
    assert pass_values(device) == PASS_VALUES["cuda"]
