// Swagger UI on this server's own /openapi.json; "Try it out" sends to this origin.
// validatorUrl: null keeps the page from asking validator.swagger.io about the document.
// The inference token the dashboard keeps for this tab (if any) goes with the document's
// fetch and with each request that has no Authorization of its own (Authorize sets one).
"use strict";
const inferenceToken = sessionStorage.getItem("ligeiro.inference-token");
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
  defaultModelsExpandDepth: 0,
  requestInterceptor: (request) => {
    const headers = request.headers || {};
    const given = Object.keys(headers).some((name) => name.toLowerCase() === "authorization");
    if (inferenceToken && !given) headers.Authorization = `Bearer ${inferenceToken}`;
    request.headers = headers;
    return request;
  },
});
