import type { NextConfig } from "next";

const nextConfig: NextConfig = {
  // A self-contained server bundle for the console's container image (deploy/k8s).
  output: "standalone",
  reactStrictMode: true,
  poweredByHeader: false,
};

export default nextConfig;
