-- A pairing request that renews a lapsed pairing says so on every approver's
-- copy ("🔁 Pairing renewal", domain/notices.py), as on the owner's first
-- notification: the flag is stored with the request (it was only in the
-- `pairing.requested` audit details).
ALTER TABLE approvals ADD COLUMN renewal boolean NOT NULL DEFAULT false;
