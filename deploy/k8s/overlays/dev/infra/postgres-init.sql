-- Run once by the postgres image on an empty data directory: the telephony-gateway's database
-- (the registry's, "agentline", is POSTGRES_DB).
CREATE DATABASE agentline_telephony;
