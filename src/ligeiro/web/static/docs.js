// Swagger UI on this server's own /openapi.json; "Try it out" sends to this origin.
// validatorUrl: null keeps the page from asking validator.swagger.io about the document.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
  defaultModelsExpandDepth: 0,
});
