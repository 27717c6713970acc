// The model folder's model.onnx, run in this page by onnxruntime-web (WebAssembly): no
// server, nothing leaves the device. build.py writes model.json (ligeiro.load's
// metadata: features, labels, which outputs hold them) beside model.onnx.
import * as ort from "./ort/ort.wasm.min.mjs";

// One thread: no SharedArrayBuffer, so no cross-origin isolation headers needed.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;

const meta = await (await fetch("model.json")).json();
const session = await ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] });
const input = meta.inputs[0].name;

// rows: objects of named features (a missing one is NaN, as the server's imputer expects)
// or arrays in the model's feature order. Returns [{label, probabilities}] per row.
export async function predict(rows) {
  const width = meta.features.length;
  const data = new Float32Array(rows.length * width);
  rows.forEach((row, i) => {
    meta.features.forEach((name, j) => {
      const value = Array.isArray(row) ? row[j] : row[name];
      data[i * width + j] = value === null || value === undefined || value === "" ? NaN : Number(value);
    });
  });
  const outputs = await session.run({ [input]: new ort.Tensor("float32", data, [rows.length, width]) });
  const labels = Array.from(outputs[meta.label_output].data, (v) =>
    meta.labels ? meta.labels[Number(v)] : Number(v),
  );
  const probabilities = meta.probability_output ? outputs[meta.probability_output].data : null;
  const classes = probabilities ? probabilities.length / rows.length : 0;
  return labels.map((label, i) => ({
    label,
    probabilities: probabilities ? Array.from(probabilities.slice(i * classes, (i + 1) * classes)) : null,
  }));
}

const form = document.querySelector("#features");
for (const name of meta.features) {
  const label = document.createElement("label");
  label.textContent = name;
  const field = document.createElement("input");
  Object.assign(field, { type: "number", step: "any", name, required: true });
  label.append(field);
  form.insertBefore(label, form.querySelector("button"));
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const row = Object.fromEntries(new FormData(form));
  const [answer] = await predict([row]);
  const shown = answer.probabilities
    ? ` (${(Math.max(...answer.probabilities) * 100).toFixed(1)}%)`
    : "";
  document.querySelector("#answer").textContent = `${answer.label}${shown}`;
});
document.querySelector("#model").textContent = `${meta.name} version ${meta.version}`;
window.ligeiroModel = { predict, meta };
document.body.dataset.ready = "true";
