import sys; sys.path[:0] = [".", "lab"]

from load_run import load

run = load("runs/sst2-stsb")              # what exercise 1 wrote
layer = "layers.2.value"
H = run.layer_inputs("stsb", layer)       # STS-B's inputs to this layer: (tokens, 384)
print("H:", tuple(H.shape))
for init in ("lora", "osrm"):
    dW_sst2 = run.task_vector(init, "sst2")[layer].double()   # (384, 384) = s B A
    dW_stsb = run.task_vector(init, "stsb")[layer].double()
    interference = (H @ dW_sst2.T).norm()  # what SST-2's update adds on STS-B's inputs
    signal = (H @ dW_stsb.T).norm()        # what STS-B's own update adds
    print(f"{init}: ||dW_sst2 H|| / ||dW_stsb H|| = {interference / signal:.3f}")
