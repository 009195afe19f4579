// The API page: Swagger UI (vendored) rendering the app's own openapi.yaml.
"use strict";
(() => {
  const el = document.getElementById("swagger-ui");
  if (!el || !window.SwaggerUIBundle) return;
  window.stapipeApiDocs = window.SwaggerUIBundle({
    url: el.dataset.specUrl, domNode: el, deepLinking: false, docExpansion: "list",
    defaultModelsExpandDepth: 0, tryItOutEnabled: false,
    requestInterceptor: (req) => { req.headers["X-CSRF-Token"] = window.stapipe.csrf(); return req; },
  });
})();
